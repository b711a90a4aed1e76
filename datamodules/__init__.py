from datamodules.mnist import DataError, MNISTDataModule, MNISTSplit, make_split

__all__ = ["DataError", "MNISTDataModule", "MNISTSplit", "make_split"]

from datamodules.mnist import IMAGE_SIZE, NUM_CLASSES, DataError, MNISTDataModule, MNISTSplit, make_split

__all__ = ["IMAGE_SIZE", "NUM_CLASSES", "DataError", "MNISTDataModule", "MNISTSplit", "make_split"]

from datamodules.mnist import IMAGE_SHAPE, IMAGE_SIZE, NUM_CLASSES, DataError, MNISTDataModule, MNISTSplit, make_split

__all__ = ["IMAGE_SHAPE", "IMAGE_SIZE", "NUM_CLASSES", "DataError", "MNISTDataModule", "MNISTSplit", "make_split"]

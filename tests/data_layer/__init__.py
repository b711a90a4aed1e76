"""The data layer: the MNIST files, the split, and the batches the datamodule makes of them."""

"""What the variants learn on the real MNIST."""

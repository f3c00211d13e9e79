"""Built-in blocks, one module per block type."""

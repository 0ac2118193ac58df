"""A Flower app that only exchanges empty messages: Flower's floor (see README.md)."""

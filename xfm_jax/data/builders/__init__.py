"""TFDS builders. Importing a module registers its builder with tfds under its snake_case name."""

"""MONAI Label tasks for the annotation-efficient bundles."""

"""The reconcile loops and the sources that feed them."""

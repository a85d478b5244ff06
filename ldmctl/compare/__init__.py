"""`ldmctl compare`: experiments that train or sample several variants and judge them side by side.

It sits above both `ldmctl.train` and `ldmctl.eval`, since a comparison trains models and measures them."""

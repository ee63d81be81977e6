"""Body models (the built-in open body and user SMPL files) behind one interface."""

"""The animatable avatar: canonical field, skinning, renderer, priors and the one-image optimiser."""

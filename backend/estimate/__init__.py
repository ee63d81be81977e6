"""What the photo-only path estimates from the photo itself: the lens (exif.py), the person's
landmarks and mask (person.py, MediaPipe BlazePose, offline) and the body's pose, translation and
the guides that keep the silhouette refinement near the landmarks (body_init.py)."""

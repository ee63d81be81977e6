"""The built-in open body's rest skeleton (mean shape), so the add-on can make a rig before any
backend is reached. tests/test_open_body.py checks these numbers against the asset."""

# (24, 3) rest joints in SMPL order, metres, SMPL frame (Y up, facing +Z), pelvis near the origin
OPEN_BODY_REST_JOINTS = (
    (0.0000, -0.2300, 0.0300), (0.1019, -0.2415, 0.0271), (-0.1019, -0.2415, 0.0271),
    (0.0000, -0.0943, 0.0093), (0.1351, -0.6305, 0.0594), (-0.1351, -0.6305, 0.0594),
    (0.0000, -0.0193, 0.0115), (0.1766, -1.0290, 0.0230), (-0.1766, -1.0290, 0.0230),
    (0.0000, 0.1134, -0.0127), (0.1879, -1.0750, 0.1553), (-0.1879, -1.0750, 0.1553),
    (0.0000, 0.2793, 0.0267), (0.0220, 0.2125, 0.0447), (-0.0220, 0.2125, 0.0447),
    (0.0000, 0.3763, 0.0611), (0.1616, 0.1871, 0.0363), (-0.1616, 0.1871, 0.0363),
    (0.4141, 0.1871, 0.0363), (-0.4141, 0.1871, 0.0363), (0.6412, 0.1871, 0.0363),
    (-0.6412, 0.1871, 0.0363), (0.7372, 0.1796, 0.0382), (-0.7372, 0.1796, 0.0382),
)
OPEN_BODY_SOLE_Y = -1.0998   # the rest mesh's lowest point (soles), same frame

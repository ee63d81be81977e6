"""Bake an avatar into a rigged, textured mesh (glTF binary, FBX, OBJ): docs/export.md."""

"""The face in a frame: detection and landmarks, the official crop, eye/lip open ratios, paste-back."""

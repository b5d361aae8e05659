"""Motion: implicit keypoints (x_c, R, exp, t, s), motion transfer in every official mode, Kalman
smoothing of video-source motion, and motion templates (a driving video's motion, saved)."""

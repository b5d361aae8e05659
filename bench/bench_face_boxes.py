"""Licence-clean face boxes on turned heads: OpenCV's Haar cascade against MediaPipe's BlazeFace.

    .venv/bin/python -m bench.bench_face_boxes --weights DIR   # with DIR/mediapipe/*.tflite

The astronaut photo (engines/data/astronaut.jpg) is rolled about the face centre (in-plane, -90 to
+90 degrees) and given yaw-like perspective views (one side of the face pulled in by k x the face
region's width and shortened by 0.3 k x its height, as a head turned away foreshortens; a 2-D
stand-in, not a real profile). A
detector finds the face when one of its boxes overlaps the transformed brows-to-chin box with
IoU > 0.3. Needs the blazeface extra (ai-edge-litert) and the model file.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from engines.demo import portrait
from engines.face.detection import BLAZEFACE_FILE, BoxDetector
from engines.face.detection.blazeface import BlazeFace
from engines.face.detection.haar import HaarAnalyzer, box_iou

FACE = np.array([180.0, 90.0, 272.0, 178.0])  # brows to chin, cheek to cheek (by eye)
CENTER = (226.0, 134.0)
ROLLS = (0, 15, -15, 30, -30, 45, -45, 60, -60, 90, -90)
YAWS = (0.2, 0.35, 0.5, 0.6, 0.7)


def views() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, face box) of every rolled and yaw-like view of the astronaut."""
    image = portrait()
    corners = np.array([[FACE[0], FACE[1]], [FACE[2], FACE[1]], [FACE[2], FACE[3]], [FACE[0], FACE[3]]])
    out = []
    for roll in ROLLS:
        m = cv2.getRotationMatrix2D(CENTER, roll, 1.0)
        pts = corners @ m[:, :2].T + m[:, 2]
        view = cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
        out.append((f"roll {roll:+d} deg", view, np.concatenate([pts.min(0), pts.max(0)])))
    x1, y1, x2, y2 = 150.0, 40.0, 300.0, 220.0
    w, h = x2 - x1, y2 - y1
    src = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    for k in YAWS:
        for side in ("right", "left"):  # that side of the face turns away: narrowed by k w, shortened
            if side == "right":
                dst = [[x1, y1], [x2 - k * w, y1 + 0.15 * k * h], [x2 - k * w, y2 - 0.15 * k * h], [x1, y2]]
            else:
                dst = [[x1 + k * w, y1 + 0.15 * k * h], [x2, y1], [x2, y2], [x1 + k * w, y2 - 0.15 * k * h]]
            m = cv2.getPerspectiveTransform(src, np.array(dst, np.float32))
            pts = cv2.perspectiveTransform(corners[None].astype(np.float64), m)[0]
            view = cv2.warpPerspective(image, m, (512, 512), borderValue=(128, 128, 128))
            out.append((f"yaw-like {k:.2f} {side}", view, np.concatenate([pts.min(0), pts.max(0)])))
    return out


def found(detector: BoxDetector, image: np.ndarray, face: np.ndarray) -> bool:
    boxes = [f.box for f in detector.detect(image)]
    return bool(boxes) and float(box_iou(face, np.stack(boxes)).max()) > 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help=f"weights directory holding {BLAZEFACE_FILE}")
    args = parser.parse_args()
    detectors: dict[str, BoxDetector] = {
        "Haar": HaarAnalyzer(),
        "BlazeFace": BlazeFace(Path(args.weights) / BLAZEFACE_FILE),
    }
    totals = dict.fromkeys(detectors, 0)
    all_views = views()
    print("| view | " + " | ".join(detectors) + " |")
    print("| --- |" + " --- |" * len(detectors))
    for name, image, face in all_views:
        hits = {d: found(det, image, face) for d, det in detectors.items()}
        for d, hit in hits.items():
            totals[d] += hit
        print(f"| {name} | " + " | ".join("found" if h else "missed" for h in hits.values()) + " |")
    print("| **found** | " + " | ".join(f"{totals[d]} / {len(all_views)}" for d in detectors) + " |")


if __name__ == "__main__":
    main()

"""The `faces` and `min_face_size` options: the forms a job, a form field or a flag may take."""

import pytest
from pydantic import ValidationError

from common.options import MAX_FACES, AnimationOptions


@pytest.mark.parametrize(
    ("given", "faces"),
    [
        ("largest", "largest"),
        ("all", "all"),
        ("2", (2,)),
        ("2,0,2", (0, 2)),
        ([3, 1], (1, 3)),
        ((0,), (0,)),
    ],
)
def test_faces_takes_largest_all_or_indices(given: object, faces: object) -> None:
    options = AnimationOptions(faces=given)
    assert options.faces == faces
    assert AnimationOptions.model_validate_json(options.model_dump_json()) == options


def test_the_default_is_the_official_largest_face() -> None:
    assert AnimationOptions().faces == "largest" and AnimationOptions().min_face_size == 0.0


@pytest.mark.parametrize(
    "given",
    ["left", "ALL", "1,a", "", "-1", 2, True, [-1], [MAX_FACES], [], list(range(MAX_FACES + 1))],
)
def test_malformed_faces_are_refused(given: object) -> None:
    with pytest.raises(ValidationError) as err:
        AnimationOptions(faces=given)
    assert all(error["loc"][0] == "faces" for error in err.value.errors())


def test_faces_other_than_largest_need_the_crop() -> None:
    assert AnimationOptions(faces="largest", flag_do_crop=False).faces == "largest"
    with pytest.raises(ValidationError, match="flag_do_crop"):
        AnimationOptions(faces="all", flag_do_crop=False)


@pytest.mark.parametrize("size", [-0.1, 1.0])
def test_min_face_size_is_a_fraction(size: float) -> None:
    with pytest.raises(ValidationError):
        AnimationOptions(min_face_size=size)

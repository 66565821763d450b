"""RaFD file names: `Rafd090_07_Caucasian_female_happy_frontal.jpg`.

Every label of a RaFD image lives in its name; this module is the one place that parses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from starcli.data.registry import DatasetSpec


@dataclass(frozen=True)
class RafdName:
    file: str
    angle: int
    subject: int
    ethnicity: str
    gender: str
    expression: str
    gaze: str

    def as_row(self) -> dict:
        return asdict(self)


def parse_rafd_name(file: str, spec: DatasetSpec) -> tuple[RafdName | None, str]:
    """(parsed name, "") or (None, reason) for a base file name."""
    regex = spec.filename_regex
    if regex is None:
        raise ValueError(f"{spec.name} has no filename_pattern in the registry")
    m = regex.match(file)
    if m is None:
        return None, "name does not follow the RaFD pattern Rafd<angle>_<subject>_<ethnicity>_" \
                     "<gender>_<expression>_<gaze>.jpg"
    angle = int(m["angle"])
    if spec.angles and angle not in spec.angles:
        return None, f"unknown angle {angle:03d} (known: {', '.join(map(str, spec.angles))})"
    expression = m["expression"]
    if spec.expressions and expression not in spec.expressions:
        return None, f"unknown expression '{expression}'"
    gaze = m["gaze"]
    if spec.gazes and gaze not in spec.gazes:
        return None, f"unknown gaze '{gaze}'"
    gender = m["gender"]
    return RafdName(file=file, angle=angle, subject=int(m["subject"]),
                    ethnicity=m["ethnicity"], gender=gender, expression=expression,
                    gaze=gaze), ""

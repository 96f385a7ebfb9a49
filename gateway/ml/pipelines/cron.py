"""The `schedule:` of a pipeline: `{every_s}` or `{cron}` (five fields, UTC), and when a slot is due.
The scheduler that runs them is schedule.py."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field, field_validator, model_validator

from gateway.yamlspec import StrictModel

CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def cron_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    """One field of a cron expression: `*`, `5`, `1-5`, `*/15`, `1-30/5`, or a comma list of those."""
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"{name}: bad step {step_text!r}")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise ValueError(f"{name}: bad range {span!r}")
            first, last = int(a), int(b)
        elif span.isdigit():
            first = last = int(span)
            if step is not None:
                last = high
        else:
            raise ValueError(f"{name}: {span!r} is not a number, range or *")
        if not low <= first <= last <= high:
            raise ValueError(f"{name}: {span!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step or 1))
    return frozenset(v % 7 if name == "day of week" else v for v in values)  # 7 is Sunday too


class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC. As in cron,
    when both day fields are restricted a day matching either one fires."""

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError("a cron expression has five fields: minute hour day-of-month month day-of-week")
        self.expression = expression
        parsed = [cron_field(f, n, lo, hi) for f, (n, lo, hi) in zip(fields, CRON_FIELDS, strict=True)]
        self.minutes, self.hours, self.days, self.months, self.weekdays = parsed
        self.any_day, self.any_weekday = fields[2] == "*", fields[4] == "*"

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        day, weekday = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday

    def latest(self, now: datetime, within_s: float) -> datetime | None:
        """The newest fire time at or before `now`, if one is at most `within_s` old."""
        t = now.replace(second=0, microsecond=0)
        while (now - t).total_seconds() <= within_s:
            if self.matches(t):
                return t
            t -= timedelta(minutes=1)
        return None


class ScheduleSpec(StrictModel):
    every_s: float | None = Field(
        None, ge=1, description="Run at most this often, first as soon as approved."
    )
    cron: str | None = Field(
        None, description="Five-field cron expression, UTC (`0 3 * * *`: daily at 03:00)."
    )
    catch_up_s: float = Field(
        600, ge=60, description="cron: a fire time missed by more than this (gateway down) is skipped."
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            Cron(value)
        return value

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        if (self.every_s is None) == (self.cron is None):
            raise ValueError("give exactly one of every_s and cron")
        return self

    def due(self, now: datetime, last: datetime | None) -> datetime | None:
        """The slot to run now (None: not due), given the last claimed slot."""
        if self.every_s is not None:
            if last is None or (now - last).total_seconds() >= self.every_s:
                return now
            return None
        assert self.cron is not None
        slot = Cron(self.cron).latest(now, self.catch_up_s)
        if slot is None or (last is not None and slot <= last):
            return None
        return slot

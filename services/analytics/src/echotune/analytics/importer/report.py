"""What an import did: counts per file and overall, rejections by reason with examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXAMPLES_PER_REASON = 3


@dataclass
class Counts:
    """Records read and what became of them."""

    read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain mapping."""
        return dict(self.__dict__)


@dataclass
class ImportReport:
    """Counts per source file and overall; rejections by reason with a few examples."""

    files: dict[str, Counts] = field(default_factory=dict)
    file_errors: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def counts(self, source: str) -> Counts:
        """The counts of one source file (created on first use)."""
        return self.files.setdefault(source, Counts())

    @property
    def total(self) -> Counts:
        """The counts of all files together."""
        total = Counts()
        for counts in self.files.values():
            for name, value in counts.__dict__.items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def reject(self, source: str, where: str, reason: str, message: str) -> None:
        """Count one rejected record and keep an example of the reason."""
        self.counts(source).rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(f"{where}: {message}")

    def file_failed(self, source: str, message: str) -> None:
        """A file that could not be read to its end (what came before it still counts)."""
        self.counts(source)
        self.file_errors[source] = message

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "total": self.total.as_dict(),
            "files": {name: counts.as_dict() for name, counts in self.files.items()},
            "file_errors": self.file_errors,
            "rejected_by_reason": dict(sorted(self.reasons.items())),
            "examples": self.examples,
        }

    def as_text(self) -> str:
        """A short human-readable summary."""

        def line(counts: Counts) -> str:
            return (
                f"{counts.read} records: {counts.imported} imported, "
                f"{counts.duplicates} duplicates, {counts.rejected} rejected"
            )

        lines = [f"  {name}: {line(counts)}" for name, counts in self.files.items()]
        lines += [
            f"  {name}: NOT READ TO THE END: {error}" for name, error in self.file_errors.items()
        ]
        lines.append(f"total: {line(self.total)}")
        if self.reasons:
            lines.append("rejected by reason:")
            for reason, count in sorted(self.reasons.items()):
                lines.append(f"  {reason}: {count}")
                lines += [f"    e.g. {example}" for example in self.examples.get(reason, [])]
        return "\n".join(lines)

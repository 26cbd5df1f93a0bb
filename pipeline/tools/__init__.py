"""Commands over the recorded results: `compare` (the table), `sweep` (queued DVC experiments),
`report` (the reflection report)."""

"""Item encoders for the features stage (`kinds`: one registry of encoder kinds) and the seeded
random-weight model builders that the offline demo, the tests and the benchmarks load through the same
`from_pretrained` path as real weights (`builders`)."""

"""One module per DVC stage (names.STAGES), each a pure `run()` over the core and a thin `main()`
that reads params and inputs, writes outputs (`paths`) and records in MLflow. A stage never
imports another stage; `cli` is the edge every `main()` runs through."""

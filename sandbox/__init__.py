"""The sandbox: scenario config, the store, the step graph, the runner and the CLI."""

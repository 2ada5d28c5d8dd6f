"""rank actor: one OS process per GPU rank (or CPU worker) holding a model and its generation engine."""

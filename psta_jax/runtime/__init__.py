"""Process plumbing: command-line bootstrap, CPU setup, errors, the device mesh, joining a
multi-process run, checkpoints and the workdir."""

"""Where the model lives: the resident worker process, the batch loop, batching and the model
backends. The only layer that imports torch."""

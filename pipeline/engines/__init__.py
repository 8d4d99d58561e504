"""The engines that run the preprocess chain over an input, chunk by chunk: `local` (worker processes on this
machine) and `ray` (Ray Data, on a cluster). Both cut the input into the same chunks (`plan`), write each chunk's
files the same way (`chunk`) and journal them the same way (`journal`); `pipeline.run` drives either."""

"""What a training run and an evaluation share: the train state, its optimizer, orbax checkpoints,
restoring a run from its workdir, and workdir paths (local or gs://). Below train/ and eval/, which are
siblings."""

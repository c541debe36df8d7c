"""What a training run and an evaluation share: the train state, its optimizer, orbax checkpoints and
restoring a run from its workdir. Below train/ and eval/, which are siblings."""

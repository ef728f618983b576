"""Model shapes shared by the GPU benchmarks (scripts in this folder import it by name)."""

# Qwen3-4B (config.json of Qwen/Qwen3-4B); rope_theta and max_position_embeddings do not change cost.
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=262144,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

from psta_jax.evaluation.metrics import cmc_map, rank_metrics

"""Evaluation: likelihoods (validation ELBO / NLL, conditional log-likelihood), benchmarks, generation."""

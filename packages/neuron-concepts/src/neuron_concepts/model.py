"""The building blocks of Concepts from Neurons under their earlier module name: they live in
`neuron_concepts.sae` (the sparse autoencoder), `neuron_concepts.selection` (facility location) and
`neuron_concepts.bottleneck` (OMP and the concept bottleneck); `from neuron_concepts.model import ...` keeps working.
"""

from neuron_concepts.bottleneck import C_GRID, ConceptBottleneck, Contributions, sparse_decompose
from neuron_concepts.sae import SAEKind, SparseAutoencoder, encode_all, resample_dead_latents, sae_metrics
from neuron_concepts.selection import facility_location, facility_value, squared_cosine_similarity

__all__ = ["C_GRID", "ConceptBottleneck", "Contributions", "SAEKind", "SparseAutoencoder", "encode_all",
           "facility_location", "facility_value", "resample_dead_latents", "sae_metrics", "sparse_decompose",
           "squared_cosine_similarity"]

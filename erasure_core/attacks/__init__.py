"""Attacks on an erased model (white-box), each one module with its config, its objective and its function.

- soft_prompt: textual inversion against the erasure (learned token embeddings in the concept's place);
- discrete_prompt: words before the concept's prompt, searched over the vocabulary (UnlearnDiffAtk's loss);
- concept_vector: the concept's text-embedding direction added to innocent prompts (Ring-A-Bell).
"""
from .concept_vector import ConceptVectorConfig, attack_concept_vector
from .discrete_prompt import DiscretePromptConfig, attack_discrete_prompt
from .soft_prompt import SoftPromptConfig, attack_soft_prompt

# name -> (config class, attack function)
ATTACKS = {
    "soft_prompt": (SoftPromptConfig, attack_soft_prompt),
    "discrete_prompt": (DiscretePromptConfig, attack_discrete_prompt),
    "concept_vector": (ConceptVectorConfig, attack_concept_vector),
}

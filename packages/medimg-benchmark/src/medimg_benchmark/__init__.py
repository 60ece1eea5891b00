"""medimg-benchmark: one ground-truth benchmark across medimg's explanation types (`medimg benchmark`).

First version: saliency maps of the post-hoc explainers (medimg_core.posthoc) on the medimg-core baseline,
scored on synth-derm against the rule concepts' pixel masks (localisation), by RISE's deletion and insertion
(faithfulness) and by Adebayo et al.'s cascading model randomisation (sanity). See README.md.
"""

__version__ = "0.1.0"

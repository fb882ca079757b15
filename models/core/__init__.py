"""The shared model core: what every model file builds on (base class, registry, shared layers, graph
preparation, data loading, the trainer and the full-ranking evaluator). A model file imports only from
here and from `mmpipe`, never from another model file or from `stages/`."""

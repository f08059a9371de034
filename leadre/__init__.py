"""The `leadre` command, above both packages: it assembles the sub-commands of
``leadre_model`` (data, index, train, eval, experiment) and ``services`` (serve, pipeline)
and owns ``demo``, which runs the whole system end to end."""

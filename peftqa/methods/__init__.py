"""The PEFT methods: one module per method (peftqa/methods/<name>.py: its builder, and a method written here its own
attach, save and load), each registering its entry in the registry (registry: Method, Native, Family, get, register,
REGISTRY); what several methods build on (shared); and a backbone loaded with a method attached (attach). Each
method's settings, the knobs of its params.yaml section, live apart in peftqa.params.knobs, which params validates
without importing any of this.

This face imports nothing: `get(name)` imports a method's module when it is first asked for, so code that loads one
method runs that method's module and the shared ones, not the rest.
"""

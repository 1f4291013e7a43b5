"""Agent modules. Each one is a feature with a small lifecycle; modules never import each other."""

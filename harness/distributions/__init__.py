"""Distribution families q(x; theta), one module each; register new ones in ``harness.registry``."""

"""``python -m train_cli`` runs the zoo command (used by launchers such as torchrun)."""

from train_cli.main import main

main()

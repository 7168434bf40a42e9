"""``python -m gradwatch`` runs the ``gradwatch`` command."""

from gradwatch.cli import main

if __name__ == "__main__":
    main()

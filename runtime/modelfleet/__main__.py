from modelfleet.cli import main

if __name__ == "__main__":  # not when the forward process (spawn) imports it
    raise SystemExit(main())

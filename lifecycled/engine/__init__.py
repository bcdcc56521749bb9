"""The imperative shell: runtime (composition root), dispatcher, tracker, Recover, janitor."""

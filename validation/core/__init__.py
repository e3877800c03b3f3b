"""What every run and engine shares: the images (`data`), the participants (`runners`), stored files (`stored`)
and the gate of drift and accuracy (`gate`)."""

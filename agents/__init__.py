"""Agents: LLM backends, the item-perception (IP) agent, the user-simulation (US) agent."""

"""mevos.client"""

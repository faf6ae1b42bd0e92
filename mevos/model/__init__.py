"""mevos.model"""

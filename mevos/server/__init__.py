"""mevos.server"""

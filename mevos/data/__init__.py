"""mevos.data"""
